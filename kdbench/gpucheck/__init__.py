"""``make gpu-check``: one prepared script for a short window on a bare GPU machine (issue 30).

``python -m kdbench.gpucheck --out DIR [--dry-run]`` runs, each part in its own process under its own time
budget (8 minutes in all by default; in the order a, c, b):

(a) ``checks``: the tests that need CUDA, and a one-epoch smoke run of one method per family (logit KD /
    DKD with the cached teacher, top-k captured, the feature methods FitNet and CRD, token-level KD on the
    toy LM) on a small slice, bf16 and compiled; a dtype or device error fails that run loudly (named in
    the summary) and the next one goes on;
(b) ``bench``: ``make bench``'s GPU sections (:mod:`kdbench.bench`'s own functions) for three CIFAR pairs
    at batch 64 and 256, online and cached, and fused K = 1, 4, 8, with the speed targets MET / NOT MET;
(c) ``run``: a 10-epoch CIFAR-10 (JPEG q75 copy) KD run of resnet56 -> resnet20 with ``trainer=gpu``,
    killed (SIGKILL) half-way and run again with the same command, which resumes it.

Whatever happens, ``DIR`` gets ``<device>.md`` (the summary tables), ``gpucheck.log``, ``records.tar.gz``
(the run records, the parts' results, the test report) and ``summary.json``. ``--dry-run`` rehearses the
whole thing on CPU at tiny sizes. The hydra-core / omegaconf wheels a bare machine lacks are installed
from ``.gpucarry/wheels`` (``make gpu-wheels``). How to run it on a lent GPU: ``docs/gpu.md``.
"""

#: the parts, in the issue's order (also the names ``--parts`` and ``--budget`` take)
PARTS = ("checks", "bench", "run")
#: the order they run in: the bench saves each row as it is measured, so it is the one to take what time is left
RUN_ORDER = ("checks", "run", "bench")
