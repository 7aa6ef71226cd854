#!/bin/sh
# Device-tree nodes the kernel lane adds to qemu's virt machine (appended to
# the dts that `qemu-system-aarch64 -M virt,dumpdtb=` wrote; dtc merges the
# second root node into the first). Written for this project:
#  - two u-dma-buf regions as on a board's device tree: udmabuf0 (16 MiB from
#    the default CMA area, cached, needs sync) and udmabuf1 (16 MiB,
#    dma-coherent: an HPC/CCI port), which takes its memory from a
#    reserved-memory region of its own (a reusable shared-dma-pool at 1.75 GiB);
#  - a zocl node ("xlnx,zocl", as PYNQ's and Vitis' platforms have it), whose
#    buffer objects then come from the default CMA area (cma= on the command line).
# A node whose driver is not loaded is inert.
cat <<'DTS'

/ {
	reserved-memory {
		#address-cells = <2>;
		#size-cells = <2>;
		ranges;
		udmabuf_pool: udmabuf-pool@70000000 {
			compatible = "shared-dma-pool";
			reusable;
			reg = <0x0 0x70000000 0x0 0x1000000>;
		};
	};
	udmabuf0 {
		compatible = "ikwzm,u-dma-buf";
		device-name = "udmabuf0";
		minor-number = <0>;
		size = <0x0 0x1000000>;
	};
	udmabuf1 {
		compatible = "ikwzm,u-dma-buf";
		device-name = "udmabuf1";
		minor-number = <1>;
		size = <0x0 0x1000000>;
		memory-region = <&udmabuf_pool>;
		dma-coherent;
	};
	zyxclmm_drm {
		compatible = "xlnx,zocl";
		status = "okay";
	};
};
DTS
