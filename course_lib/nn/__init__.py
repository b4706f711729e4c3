"""Phase 2 neural-network references: attention, transformer blocks, and the models built from them."""
