"""Worker for tests/test_distributed_faults.py: joins a MultiWorkerMirroredStrategy
cluster (TF_CONFIG from the parent) and all-reduces once.

    python mwms_join.py DEADLINE_S

The deadline is enforced by faulthandler's watchdog, a C thread that needs no
GIL: if a peer dies before the cluster forms, TensorFlow waits for it inside
MultiWorkerMirroredStrategy() (context.ensure_initialized) while holding the
GIL, where a Python threading.Timer or signal handler never runs. On expiry it
prints every thread's stack ("Timeout (0:00:15)!") and exits with status 1.
"""

import faulthandler
import os
import sys

faulthandler.dump_traceback_later(float(sys.argv[1]), exit=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import fixed_loss_scale as fls  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()
print("strategy ready", flush=True)


@tf.function
def step():
  per_replica = strategy.run(lambda: fls.unscale_gradients([tf.constant([8.0])], 4.0)[0])
  return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)


print("all-reduced", step().numpy().tolist(), flush=True)
faulthandler.cancel_dump_traceback_later()
