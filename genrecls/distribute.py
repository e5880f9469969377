"""tf.distribute for training: one strategy per process, chosen by --distribute.

    none         the default strategy (one device)
    mirrored     MirroredStrategy over the local GPUs (one CPU device on a machine without a GPU)
    multiworker  MultiWorkerMirroredStrategy over the machines listed in TF_CONFIG

The batch size is the global batch: each step splits it over the replicas,
whose gradients are summed, so a distributed run takes the same steps as one
process. Under multiworker every worker runs the same program: each call of
fit (and each variable created in the strategy's scope) is a collective that
all workers must reach, so a worker that skipped one would leave the others
waiting. Only the chief (task type chief, else worker 0) writes the run folder;
the other workers write theirs into a scratch folder of their own
(`scratch_folder`), deleted when they finish.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

from genrecls.errors import GenreclsError

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class Task:
    """This process's place in a TF_CONFIG cluster."""

    type: str
    index: int
    has_chief: bool = False  # the cluster names a chief; else worker 0 is the chief

    @property
    def chief(self) -> bool:
        return self.type == "chief" or (self.type == "worker" and self.index == 0 and not self.has_chief)


def cluster_task(environ=os.environ) -> Task:
    """TF_CONFIG checked: its cluster of host:port lists and this process's task in it (one-line errors)."""
    text = environ.get(TF_CONFIG)
    fix = ('set TF_CONFIG to e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
           '"task": {"type": "worker", "index": 0}} (see the README, "Distributed training")')
    if not text:
        raise GenreclsError(f"--distribute multiworker needs the {TF_CONFIG} environment variable; {fix}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GenreclsError(f"{TF_CONFIG} is not valid JSON ({exc}); {fix}") from None
    cluster = doc.get("cluster") if isinstance(doc, dict) else None
    task = doc.get("task") if isinstance(doc, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(hosts, list) and hosts and all(isinstance(h, str) and ":" in h for h in hosts)
            for hosts in cluster.values()):
        raise GenreclsError(f"{TF_CONFIG} needs a cluster mapping each task type to a list of host:port; {fix}")
    if not {"worker", "chief"} & set(cluster):
        raise GenreclsError(f"{TF_CONFIG}'s cluster has no worker or chief list; {fix}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise GenreclsError(f"{TF_CONFIG} needs a task with a type and an index; {fix}")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise GenreclsError(f"{TF_CONFIG}'s task type {kind!r} is not in its cluster ({', '.join(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise GenreclsError(f"{TF_CONFIG}'s task index {index!r} is out of range: its cluster lists "
                            f"{len(cluster[kind])} {kind} address(es), so 0..{len(cluster[kind]) - 1}")
    return Task(kind, index, "chief" in cluster)


LOCAL = Task("chief", 0)  # none and mirrored: one process, the chief


def _default():
    import tensorflow as tf

    return tf.distribute.get_strategy()


def _mirrored():
    import tensorflow as tf

    # Without a GPU, MirroredStrategy runs one replica on the CPU: correct, just not faster.
    strategy = tf.distribute.MirroredStrategy()
    _patch_keras()
    return strategy


def _multiworker():
    import tensorflow as tf

    cluster_task()  # a missing or malformed TF_CONFIG fails here, before TensorFlow reads it
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _patch_keras()
    return strategy


STRATEGIES = {"none": _default, "mirrored": _mirrored, "multiworker": _multiworker}
_made: dict = {}  # name -> strategy: collectives are configured once per process, so each is made once


def get_strategy(name: str):
    """The process's strategy for --distribute NAME (made on the first call)."""
    if name not in STRATEGIES:
        raise GenreclsError(f"distribute must be one of {', '.join(STRATEGIES)}, not {name!r}")
    if name == "multiworker":
        cluster_task()
    if name not in _made:
        try:
            _made[name] = STRATEGIES[name]()
        except (RuntimeError, ValueError) as exc:  # e.g. TF already started without collectives configured
            raise GenreclsError(f"cannot start --distribute {name}: {str(exc).splitlines()[0][:300]}") from None
    return _made[name]


def task(name: str) -> Task:
    return cluster_task() if name == "multiworker" else LOCAL


def scratch_folder(out, index: int) -> str:
    """A non-chief worker's own folder for what the chief writes into the run folder.

    The same for the same --out and worker, so a restarted worker finds its
    own backups (BackupAndRestore) as the restarted chief finds its.
    """
    digest = hashlib.sha1(os.path.abspath(os.fspath(out)).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"genrecls-worker{index}-{digest}")


def multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _replica_sum(strategy, value: float) -> float:
    """`value` summed over every replica of every worker (an all-reduce all workers must reach)."""
    import tensorflow as tf

    return float(strategy.reduce("SUM", strategy.run(lambda: tf.constant(float(value), tf.float64)), axis=None))


def agree(strategy, value: int, what: str) -> None:
    """Refuse to go on unless every worker holds the same `value` (free on one process).

    Called before a step some workers could skip (a fit resumed from its
    backup, a trunk loaded from disk), so that a mismatch is an error on every
    worker instead of a hang.
    """
    if multi_worker(strategy) and \
            _replica_sum(strategy, value) != strategy.num_replicas_in_sync * value:
        raise GenreclsError(f"the workers disagree about {what}; restart every worker with the same command "
                            "(add --overwrite to all of them to start the run again)")


def all_ok(strategy, ok: bool) -> bool:
    """True when every worker says ok (`ok` itself on one process)."""
    if not multi_worker(strategy):
        return ok
    return _replica_sum(strategy, 1.0 if ok else 0.0) == strategy.num_replicas_in_sync


def _layers(layer):
    yield layer
    for inner in getattr(layer, "layers", ()):
        yield from _layers(inner)


def sync_batch_norm(model) -> None:
    """With several replicas (in a strategy's scope), batch normalization uses the global batch's statistics.

    Each replica otherwise normalizes by its own share of the batch, so a
    distributed run would train a different model from one process (and each
    worker would keep other moving averages). Nothing changes with one replica.
    """
    import tensorflow as tf

    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        import keras

        for layer in _layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True


_patched = False


def _patch_keras() -> None:
    """Two fixes Keras 3's TensorFlow trainer needs under a distribution strategy.

    - Before its first epoch, `fit` builds the model's metrics from a batch it
      takes from a fresh pass over the data, and then starts another: a dataset
      that reshuffles every pass shows the first epoch its second order, so a
      distributed run would differ from the same run in one process, which builds
      lazily. Here the build reads the dataset's element spec instead (it needs
      only shapes and dtypes), and takes nothing.
    - keras-team/keras#20585 (open for Keras 3.7-3.15), multiworker only: that
      batch, and every scalar metric, are averaged with one `strategy.reduce`
      over the whole structure or over axis 0, which MultiWorkerMirroredStrategy
      refuses; scalars are averaged over the replicas (axis=None) instead.
      Epoch-level logs (early stopping, history) are read from the metrics'
      variables, summed over all workers, so they are the global figures.
    """
    global _patched
    if _patched:
        return
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    original, is_multi = tf_trainer.reduce_per_replica, tf_trainer._collective_all_reduce_multi_worker

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _patched = True
