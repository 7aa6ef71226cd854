// axil_sum: a register-driven AXI-Lite master, the test design for pynq_alloc.cocotb's
// AxiLiteRam (written for this project). It reads COUNT 32-bit words from SRC one at a
// time, then writes their sum to DST and COUNT to DST+4.
//
// Registers (AXI-Lite slave, 32-bit):
//   0x00 CTRL    write bit 0 = 1 to start
//   0x04 STATUS  bit 0 busy, bit 1 done (cleared by start), bit 2 error (a non-OKAY response)
//   0x08 SRC     0x0C DST     0x10 COUNT (words)
`timescale 1ns / 1ps

module axil_sum #(
    parameter ADDR_WIDTH = 32
) (
    input  wire                  clk,
    input  wire                  rst,

    input  wire [7:0]            s_axil_awaddr,
    input  wire                  s_axil_awvalid,
    output wire                  s_axil_awready,
    input  wire [31:0]           s_axil_wdata,
    input  wire [3:0]            s_axil_wstrb,
    input  wire                  s_axil_wvalid,
    output wire                  s_axil_wready,
    output reg  [1:0]            s_axil_bresp,
    output reg                   s_axil_bvalid,
    input  wire                  s_axil_bready,
    input  wire [7:0]            s_axil_araddr,
    input  wire                  s_axil_arvalid,
    output wire                  s_axil_arready,
    output reg  [31:0]           s_axil_rdata,
    output reg  [1:0]            s_axil_rresp,
    output reg                   s_axil_rvalid,
    input  wire                  s_axil_rready,

    output reg  [ADDR_WIDTH-1:0] m_axil_awaddr,
    output reg                   m_axil_awvalid,
    input  wire                  m_axil_awready,
    output reg  [31:0]           m_axil_wdata,
    output wire [3:0]            m_axil_wstrb,
    output reg                   m_axil_wvalid,
    input  wire                  m_axil_wready,
    input  wire [1:0]            m_axil_bresp,
    input  wire                  m_axil_bvalid,
    output reg                   m_axil_bready,
    output reg  [ADDR_WIDTH-1:0] m_axil_araddr,
    output reg                   m_axil_arvalid,
    input  wire                  m_axil_arready,
    input  wire [31:0]           m_axil_rdata,
    input  wire [1:0]            m_axil_rresp,
    input  wire                  m_axil_rvalid,
    output reg                   m_axil_rready
);

assign m_axil_wstrb = 4'hF;

reg [31:0] src_reg, dst_reg, count_reg;
reg        start_pulse;
reg        busy, done, error;

wire lite_wr = s_axil_awvalid && s_axil_wvalid && !s_axil_bvalid;
assign s_axil_awready = lite_wr;
assign s_axil_wready = lite_wr;
assign s_axil_arready = !s_axil_rvalid;

always @(posedge clk) begin
    start_pulse <= 1'b0;
    if (rst) begin
        s_axil_bvalid <= 1'b0;
        s_axil_bresp <= 2'b00;
        src_reg <= 0;
        dst_reg <= 0;
        count_reg <= 0;
    end else begin
        if (s_axil_bvalid && s_axil_bready) begin
            s_axil_bvalid <= 1'b0;
        end
        if (lite_wr) begin
            s_axil_bvalid <= 1'b1;
            s_axil_bresp <= 2'b00;
            case (s_axil_awaddr[7:2])
                6'h0: start_pulse <= s_axil_wdata[0];
                6'h2: src_reg <= s_axil_wdata;
                6'h3: dst_reg <= s_axil_wdata;
                6'h4: count_reg <= s_axil_wdata;
                default: ;
            endcase
        end
    end
end

always @(posedge clk) begin
    if (rst) begin
        s_axil_rvalid <= 1'b0;
        s_axil_rresp <= 2'b00;
        s_axil_rdata <= 0;
    end else begin
        if (s_axil_rvalid && s_axil_rready) begin
            s_axil_rvalid <= 1'b0;
        end
        if (s_axil_arvalid && !s_axil_rvalid) begin
            s_axil_rvalid <= 1'b1;
            s_axil_rresp <= 2'b00;
            case (s_axil_araddr[7:2])
                6'h1: s_axil_rdata <= {29'd0, error, done, busy};
                6'h2: s_axil_rdata <= src_reg;
                6'h3: s_axil_rdata <= dst_reg;
                6'h4: s_axil_rdata <= count_reg;
                default: s_axil_rdata <= 0;
            endcase
        end
    end
end

localparam S_IDLE = 3'd0, S_AR = 3'd1, S_R = 3'd2, S_WRITE = 3'd3, S_B = 3'd4;
reg [2:0]  state;
reg [31:0] left, sum;
reg        second;        // writing COUNT (the second word)
reg        aw_done, w_done;

always @(posedge clk) begin
    if (rst) begin
        state <= S_IDLE;
        busy <= 1'b0;
        done <= 1'b0;
        error <= 1'b0;
        m_axil_arvalid <= 1'b0;
        m_axil_rready <= 1'b0;
        m_axil_awvalid <= 1'b0;
        m_axil_wvalid <= 1'b0;
        m_axil_bready <= 1'b0;
        m_axil_araddr <= 0;
        m_axil_awaddr <= 0;
        m_axil_wdata <= 0;
        left <= 0;
        sum <= 0;
        second <= 1'b0;
        aw_done <= 1'b0;
        w_done <= 1'b0;
    end else begin
        case (state)
            S_IDLE: begin
                if (start_pulse) begin
                    busy <= 1'b1;
                    done <= 1'b0;
                    error <= 1'b0;
                    sum <= 0;
                    left <= count_reg;
                    m_axil_araddr <= src_reg[ADDR_WIDTH-1:0];
                    second <= 1'b0;
                    if (count_reg == 0) begin
                        state <= S_WRITE;
                    end else begin
                        m_axil_arvalid <= 1'b1;
                        state <= S_AR;
                    end
                end
            end
            S_AR: begin
                if (m_axil_arready) begin
                    m_axil_arvalid <= 1'b0;
                    m_axil_rready <= 1'b1;
                    state <= S_R;
                end
            end
            S_R: begin
                if (m_axil_rvalid) begin
                    m_axil_rready <= 1'b0;
                    sum <= sum + m_axil_rdata;
                    if (m_axil_rresp != 2'b00) begin
                        error <= 1'b1;
                    end
                    left <= left - 1;
                    if (left == 1) begin
                        state <= S_WRITE;
                    end else begin
                        m_axil_araddr <= m_axil_araddr + 4;
                        m_axil_arvalid <= 1'b1;
                        state <= S_AR;
                    end
                end
            end
            S_WRITE: begin
                m_axil_awaddr <= dst_reg[ADDR_WIDTH-1:0] + (second ? 4 : 0);
                m_axil_wdata <= second ? count_reg : sum;
                m_axil_awvalid <= 1'b1;
                m_axil_wvalid <= 1'b1;
                aw_done <= 1'b0;
                w_done <= 1'b0;
                state <= S_B;
            end
            S_B: begin
                if (m_axil_awvalid && m_axil_awready) begin
                    m_axil_awvalid <= 1'b0;
                    aw_done <= 1'b1;
                end
                if (m_axil_wvalid && m_axil_wready) begin
                    m_axil_wvalid <= 1'b0;
                    w_done <= 1'b1;
                end
                m_axil_bready <= 1'b1;
                if (m_axil_bvalid && m_axil_bready) begin
                    m_axil_bready <= 1'b0;
                    if (m_axil_bresp != 2'b00) begin
                        error <= 1'b1;
                    end
                    if (second) begin
                        busy <= 1'b0;
                        done <= 1'b1;
                        state <= S_IDLE;
                    end else begin
                        second <= 1'b1;
                        state <= S_WRITE;
                    end
                end
            end
            default: state <= S_IDLE;
        endcase
    end
end

endmodule
