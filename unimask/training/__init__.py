"""One trainer for every stage: torchrun + FSDP2, checkpoints, exact resume."""
