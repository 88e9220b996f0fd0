"""The links a camera stream can cross, with the payload rate each carries (GB/s) and how it carries it."""

# PCIe payload rate: lanes x GT/s x 128b/130b / 8 x 0.86, the share left after TLP headers (256-byte payloads)
# and DLLPs; that is 54 GB/s on Gen5 x16, what pinned copies reached on the lent H100 (51-54 GB/s).
PCIE_EFFICIENCY = 0.86
# Ethernet: TCP payload in a 1500-byte MTU frame (1460 of 1538 bytes on the wire with preamble and gap).
ETHERNET_EFFICIENCY = 1460 / 1538
LINKS = {  # key -> (name, GB/s, kind): duplex links carry input and output in separate directions
    **{f"pcie{g}_x{w}": (f"PCIe Gen{g} x{w}", w * gts * 128 / 130 / 8 * PCIE_EFFICIENCY, "duplex")
       for g, gts in ((3, 8.0), (4, 16.0), (5, 32.0)) for w in (8, 16)},
    "orin_lpddr5": ("Jetson AGX Orin LPDDR5, shared by CPU, GPU and decoders (spec peak)", 204.8, "shared"),
    "10gbe": ("10 GbE, remote inference (TCP payload)", 10 / 8 * ETHERNET_EFFICIENCY, "duplex"),
    "25gbe": ("25 GbE, remote inference (TCP payload)", 25 / 8 * ETHERNET_EFFICIENCY, "duplex"),
}
