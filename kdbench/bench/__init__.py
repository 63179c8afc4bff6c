"""``make bench``: speed benchmarks that print tables (medians and side-by-side ratios).

Sections, one module each (``python -m kdbench.bench --only <name>``):

1. ``loss`` (:mod:`~kdbench.bench.losses`): kdbench.losses.kd_loss vs the usual inline formulation
   (F.kl_div + cross_entropy), fwd+bwd.
2. ``data`` (:mod:`~kdbench.bench.data`): TensorLoader (whole dataset as a uint8 tensor, batched
   crop+flip) vs a torchvision DataLoader with per-image PIL transforms.
3. ``step`` (:mod:`~kdbench.bench.step`): teacher forward + student train step for CIFAR pairs
   (images/s), batch 64 and 256.
4. ``signals`` (:mod:`~kdbench.bench.signals`): one training epoch with the teacher ``online`` vs
   ``cached`` (exact, per (image, view)) vs ``captured`` (top-5 log-probs, no teacher) on real MNIST with
   jitter (25 views) and on a CIFAR-10 JPEG slice with crop+flip (162 views), plus each store's one-off
   build time.
5. ``harness`` (:mod:`~kdbench.bench.harness`): kdbench's own training path (DistillModule + Lightning
   Trainer through :func:`kdbench.engine.fit_and_test`, as ``kdbench.train`` runs it) against a plain
   reference loop in the style of the published KD code bases, the two alternated epoch by epoch in one
   process: images/s, the ratio, MFU, peak memory, online and cached teacher.
6. ``fused`` (:mod:`~kdbench.bench.fused`): K students per teacher pass (``fuse=K``): K separate runs vs
   one fused group, K = 1, 4, 8.

Every section prints through one writer (:mod:`~kdbench.bench.table`); :mod:`~kdbench.bench.cli` is
the command. Every figure is measured in this run on this machine (printed in the header); compare
ratios within a table, and absolute numbers only with the same device.
"""
