#!/bin/sh
# Device-tree nodes the kernel lane adds to qemu's virt machine (appended to
# the dts that `qemu-system-aarch64 -M virt,dumpdtb=` wrote; dtc merges the
# second root node into the first). Written for this project:
#  - two u-dma-buf regions as on a board's device tree: udmabuf0 (16 MiB,
#    cached, needs sync) and udmabuf1 (16 MiB, dma-coherent: an HPC/CCI port);
#  - a zocl node ("xlnx,zocl", as PYNQ's and Vitis' platforms have it), whose
#    buffer objects then come from the default CMA area (cma= on the command line).
# A node whose driver is not loaded is inert.
cat <<'DTS'

/ {
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
		dma-coherent;
	};
	zyxclmm_drm {
		compatible = "xlnx,zocl";
		status = "okay";
	};
};
DTS
