"""Training: `loop` is the pure-PyTorch trainer (no Ray); `worker` is the Ray Train glue."""

from ganaug.training.loop import (
    BATCH_SOURCES,
    BatchSource,
    GANTrainer,
    IndexStream,
    make_batch_source,
    register_batch_source,
)

__all__ = ["BATCH_SOURCES", "BatchSource", "GANTrainer", "IndexStream", "make_batch_source",
           "register_batch_source"]
