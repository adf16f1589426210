"""Process settings that make a served Rasa model cheaper in memory and CPU.

Measured on the starter model (resident memory once loaded and warmed):

- DIET's load runs one Keras training step to give its weights their shapes
  before reading the trained ones. The traced training graph and its optimizer
  stay resident: about 600 MB of a 1.3 GB process. ``lean_model_load`` builds
  the same weights by running the model's loss once, eagerly, and then reads
  the trained weights as Rasa does; answers are identical.
- TensorFlow imports jax when it is installed (for TFLite, never used here):
  about 100 MB and seconds of start-up.
- glibc gives each thread that allocates its own malloc arena, and frees
  little back after the load: two arenas and a trim after loading.
- TensorFlow's thread pools: one thread each. The service runs one model at
  a time per process and scales out with processes; a second intra-op thread
  costs more CPU per message than it saves in latency.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_M_ARENA_MAX = -8  # glibc's mallopt parameter number
_prepared = False


def prepare(threads: int = 1) -> None:
    """Sets up the process for TensorFlow; call before it is imported. Once per process.

    ``threads`` is the size of TensorFlow's intra- and inter-op pools; 0 keeps
    TensorFlow's default (one per core).
    """
    global _prepared
    if _prepared:
        return
    _prepared = True
    if "tensorflow" not in sys.modules:
        # An import of jax now fails, as if it were not installed.
        sys.modules.setdefault("jax", None)  # type: ignore[arg-type]
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, 2)
    if threads > 0:
        import tensorflow as tf  # type: ignore[import-untyped]

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # TensorFlow already started its pools: they stay as they are.


def release_free_memory() -> None:
    """Hands the memory freed after a model load back to the system."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def lean_model_load() -> Iterator[None]:
    """Rasa's TensorFlow models load without a training step while this is open."""
    from rasa.utils.tensorflow.models import RasaModel

    original = RasaModel.__dict__["load"]

    def load(cls: Any, model_file_name: str, model_data_example: Any, *args: Any, **kw: Any) -> Any:
        if args[1:2] == (True,) or kw.get("finetune_mode"):
            # Fine-tuning needs the optimizer state that Rasa's training step builds.
            return original.__func__(cls, model_file_name, model_data_example, *args, **kw)
        return _load(cls, model_file_name, model_data_example, *args, **kw)

    RasaModel.load = classmethod(load)
    try:
        yield
    finally:
        RasaModel.load = original


def _load(
    cls: Any,
    model_file_name: str,
    model_data_example: Any,
    predict_data_example: Any = None,
    finetune_mode: bool = False,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``RasaModel.load``, the weights built by one eager loss instead of ``fit``."""
    from rasa.utils.tensorflow.data_generator import RasaBatchDataGenerator

    model = cls(*args, **kwargs)
    batch_in = RasaBatchDataGenerator(model_data_example, batch_size=1)[0][0]
    # The loss touches every layer the training step does, so every weight exists.
    model._training = True
    try:
        model.batch_loss(batch_in)
    finally:
        model._training = False
    status = model.load_weights(model_file_name)
    if status is not None:
        # The checkpoint also holds the optimizer's state, which serving has no use for.
        status.expect_partial()
    if predict_data_example:
        # The first prediction traces the prediction graph: do it now, as Rasa does.
        model.run_inference(predict_data_example)
    return model
