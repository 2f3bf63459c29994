"""The demo's training recipe (spray.training runs it; spray/demo/audit.py caches the trained weights)."""

# Long enough for ~95% clean accuracy, short enough that the model still leans on the stamp (docs/demo.md
# has the measurements); batch 32 gives twice the steps of 64 for the same epochs.
EPOCHS = 13
BATCH_SIZE = 32
LR = 1e-3
