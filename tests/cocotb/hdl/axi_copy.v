// axi_copy: a register-driven AXI4 copy engine, the test design for pynq_alloc.cocotb
// (written for this project). It copies LEN bytes from SRC to DST, each at any byte
// alignment, in INCR bursts of up to MAX_BURST beats; byte strobes mask the unaligned ends.
//
// Registers (AXI-Lite, 32-bit):
//   0x00 CTRL    write bit 0 = 1 to start
//   0x04 STATUS  bit 0 busy, bit 1 done (cleared by start), bit 2 error (a SLVERR/DECERR seen)
//   0x08 SRC_LO  0x0C SRC_HI  0x10 DST_LO  0x14 DST_HI  0x18 LEN (bytes)
//   0x1C INFO    DATA_WIDTH | MAX_BURST << 16 (read only)
//
// Each chunk is read into a buffer with one burst and written out with one burst: a chunk
// stays inside one MAX_BURST*BYTES-aligned block on both sides, so no burst crosses 4 KiB.
`timescale 1ns / 1ps

module axi_copy #(
    parameter DATA_WIDTH = 64,
    parameter ADDR_WIDTH = 32,
    parameter ID_WIDTH = 4,
    parameter MAX_BURST = 16
) (
    input  wire                    clk,
    input  wire                    rst,

    input  wire [7:0]              s_axil_awaddr,
    input  wire                    s_axil_awvalid,
    output wire                    s_axil_awready,
    input  wire [31:0]             s_axil_wdata,
    input  wire [3:0]              s_axil_wstrb,
    input  wire                    s_axil_wvalid,
    output wire                    s_axil_wready,
    output reg  [1:0]              s_axil_bresp,
    output reg                     s_axil_bvalid,
    input  wire                    s_axil_bready,
    input  wire [7:0]              s_axil_araddr,
    input  wire                    s_axil_arvalid,
    output wire                    s_axil_arready,
    output reg  [31:0]             s_axil_rdata,
    output reg  [1:0]              s_axil_rresp,
    output reg                     s_axil_rvalid,
    input  wire                    s_axil_rready,

    output wire [ID_WIDTH-1:0]     m_axi_awid,
    output reg  [ADDR_WIDTH-1:0]   m_axi_awaddr,
    output reg  [7:0]              m_axi_awlen,
    output wire [2:0]              m_axi_awsize,
    output wire [1:0]              m_axi_awburst,
    output reg                     m_axi_awvalid,
    input  wire                    m_axi_awready,
    output reg  [DATA_WIDTH-1:0]   m_axi_wdata,
    output reg  [DATA_WIDTH/8-1:0] m_axi_wstrb,
    output reg                     m_axi_wlast,
    output reg                     m_axi_wvalid,
    input  wire                    m_axi_wready,
    input  wire [ID_WIDTH-1:0]     m_axi_bid,
    input  wire [1:0]              m_axi_bresp,
    input  wire                    m_axi_bvalid,
    output reg                     m_axi_bready,
    output wire [ID_WIDTH-1:0]     m_axi_arid,
    output reg  [ADDR_WIDTH-1:0]   m_axi_araddr,
    output reg  [7:0]              m_axi_arlen,
    output wire [2:0]              m_axi_arsize,
    output wire [1:0]              m_axi_arburst,
    output reg                     m_axi_arvalid,
    input  wire                    m_axi_arready,
    input  wire [ID_WIDTH-1:0]     m_axi_rid,
    input  wire [DATA_WIDTH-1:0]   m_axi_rdata,
    input  wire [1:0]              m_axi_rresp,
    input  wire                    m_axi_rlast,
    input  wire                    m_axi_rvalid,
    output reg                     m_axi_rready
);

localparam BYTES = DATA_WIDTH / 8;
localparam OFF_BITS = $clog2(BYTES);
localparam BLOCK = MAX_BURST * BYTES;
localparam BLOCK_BITS = $clog2(BLOCK);

assign m_axi_awid = 0;
assign m_axi_arid = 0;
assign m_axi_awsize = OFF_BITS;
assign m_axi_arsize = OFF_BITS;
assign m_axi_awburst = 2'b01;  // INCR
assign m_axi_arburst = 2'b01;

// ---- registers (AXI-Lite slave) ----
reg [63:0] src_reg, dst_reg;
reg [31:0] len_reg;
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
        len_reg <= 0;
    end else begin
        if (s_axil_bvalid && s_axil_bready) begin
            s_axil_bvalid <= 1'b0;
        end
        if (lite_wr) begin
            s_axil_bvalid <= 1'b1;
            s_axil_bresp <= 2'b00;
            case (s_axil_awaddr[7:2])
                6'h0: start_pulse <= s_axil_wdata[0];
                6'h2: src_reg[31:0] <= s_axil_wdata;
                6'h3: src_reg[63:32] <= s_axil_wdata;
                6'h4: dst_reg[31:0] <= s_axil_wdata;
                6'h5: dst_reg[63:32] <= s_axil_wdata;
                6'h6: len_reg <= s_axil_wdata;
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
                6'h2: s_axil_rdata <= src_reg[31:0];
                6'h3: s_axil_rdata <= src_reg[63:32];
                6'h4: s_axil_rdata <= dst_reg[31:0];
                6'h5: s_axil_rdata <= dst_reg[63:32];
                6'h6: s_axil_rdata <= len_reg;
                6'h7: s_axil_rdata <= DATA_WIDTH | (MAX_BURST << 16);
                default: s_axil_rdata <= 0;
            endcase
        end
    end
end

// ---- copy engine (AXI4 master) ----
localparam S_IDLE = 3'd0, S_PLAN = 3'd1, S_AR = 3'd2, S_R = 3'd3, S_AW = 3'd4, S_W = 3'd5,
           S_B = 3'd6;
reg [2:0] state;
reg [ADDR_WIDTH-1:0] cur_src, cur_dst;
reg [31:0] remaining;
reg [DATA_WIDTH-1:0] rbuf [0:MAX_BURST-1];
integer chunk, src_off, dst_off, wbeats, rbeat, wbeat;

// the next chunk: up to the end of the aligned block on either side
integer plan_n, to_src, to_dst, plan_soff, plan_doff;
always @* begin
    to_src = BLOCK - cur_src[BLOCK_BITS-1:0];
    to_dst = BLOCK - cur_dst[BLOCK_BITS-1:0];
    plan_n = remaining;
    if (to_src < plan_n) plan_n = to_src;
    if (to_dst < plan_n) plan_n = to_dst;
    plan_soff = cur_src[OFF_BITS-1:0];
    plan_doff = cur_dst[OFF_BITS-1:0];
end

// write beat wbeat: source bytes realigned from two buffered words, strobes on [dst_off, dst_off+chunk)
integer base, widx, shift, lane, pos;
reg [DATA_WIDTH-1:0] hi_word, lo_word;
reg [2*DATA_WIDTH-1:0] pair;
always @* begin
    base = wbeat * BYTES + src_off - dst_off + BYTES;
    widx = base / BYTES;
    shift = base % BYTES;
    hi_word = (widx >= 0 && widx < MAX_BURST) ? rbuf[widx] : {DATA_WIDTH{1'b0}};
    lo_word = (widx >= 1 && widx <= MAX_BURST) ? rbuf[widx - 1] : {DATA_WIDTH{1'b0}};
    pair = {hi_word, lo_word} >> (shift * 8);
    m_axi_wdata = pair[DATA_WIDTH-1:0];
    for (lane = 0; lane < BYTES; lane = lane + 1) begin
        pos = wbeat * BYTES + lane;
        m_axi_wstrb[lane] = (pos >= dst_off) && (pos < dst_off + chunk);
    end
end

always @(posedge clk) begin
    if (rst) begin
        state <= S_IDLE;
        busy <= 1'b0;
        done <= 1'b0;
        error <= 1'b0;
        m_axi_arvalid <= 1'b0;
        m_axi_rready <= 1'b0;
        m_axi_awvalid <= 1'b0;
        m_axi_wvalid <= 1'b0;
        m_axi_wlast <= 1'b0;
        m_axi_bready <= 1'b0;
        m_axi_araddr <= 0;
        m_axi_arlen <= 0;
        m_axi_awaddr <= 0;
        m_axi_awlen <= 0;
        cur_src <= 0;
        cur_dst <= 0;
        remaining <= 0;
        chunk <= 0;
        src_off <= 0;
        dst_off <= 0;
        wbeats <= 0;
        rbeat <= 0;
        wbeat <= 0;
    end else begin
        case (state)
            S_IDLE: begin
                if (start_pulse) begin
                    cur_src <= src_reg[ADDR_WIDTH-1:0];
                    cur_dst <= dst_reg[ADDR_WIDTH-1:0];
                    remaining <= len_reg;
                    busy <= 1'b1;
                    done <= 1'b0;
                    error <= 1'b0;
                    state <= S_PLAN;
                end
            end
            S_PLAN: begin
                if (remaining == 0) begin
                    busy <= 1'b0;
                    done <= 1'b1;
                    state <= S_IDLE;
                end else begin
                    chunk <= plan_n;
                    src_off <= plan_soff;
                    dst_off <= plan_doff;
                    wbeats <= (plan_doff + plan_n + BYTES - 1) / BYTES;
                    m_axi_araddr <= {cur_src[ADDR_WIDTH-1:OFF_BITS], {OFF_BITS{1'b0}}};
                    m_axi_arlen <= (plan_soff + plan_n + BYTES - 1) / BYTES - 1;
                    m_axi_arvalid <= 1'b1;
                    state <= S_AR;
                end
            end
            S_AR: begin
                if (m_axi_arready) begin
                    m_axi_arvalid <= 1'b0;
                    m_axi_rready <= 1'b1;
                    rbeat <= 0;
                    state <= S_R;
                end
            end
            S_R: begin
                if (m_axi_rvalid) begin
                    rbuf[rbeat] <= m_axi_rdata;
                    rbeat <= rbeat + 1;
                    if (m_axi_rresp != 2'b00) begin
                        error <= 1'b1;
                    end
                    if (m_axi_rlast) begin
                        m_axi_rready <= 1'b0;
                        m_axi_awaddr <= {cur_dst[ADDR_WIDTH-1:OFF_BITS], {OFF_BITS{1'b0}}};
                        m_axi_awlen <= wbeats - 1;
                        m_axi_awvalid <= 1'b1;
                        state <= S_AW;
                    end
                end
            end
            S_AW: begin
                if (m_axi_awready) begin
                    m_axi_awvalid <= 1'b0;
                    wbeat <= 0;
                    m_axi_wvalid <= 1'b1;
                    m_axi_wlast <= (wbeats == 1);
                    state <= S_W;
                end
            end
            S_W: begin
                if (m_axi_wready) begin
                    if (m_axi_wlast) begin
                        m_axi_wvalid <= 1'b0;
                        m_axi_wlast <= 1'b0;
                        m_axi_bready <= 1'b1;
                        state <= S_B;
                    end else begin
                        wbeat <= wbeat + 1;
                        m_axi_wlast <= (wbeat + 2 == wbeats);
                    end
                end
            end
            S_B: begin
                if (m_axi_bvalid) begin
                    m_axi_bready <= 1'b0;
                    if (m_axi_bresp != 2'b00) begin
                        error <= 1'b1;
                    end
                    cur_src <= cur_src + chunk;
                    cur_dst <= cur_dst + chunk;
                    remaining <= remaining - chunk;
                    state <= S_PLAN;
                end
            end
            default: state <= S_IDLE;
        endcase
    end
end

endmodule
