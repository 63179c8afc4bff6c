"""The CIFAR model zoo of the KD benchmarks (RepDistiller / mdistiller layouts).

Importing this package registers: resnet8/14/20/32/44/56/110, resnet8x4, resnet32x4, ResNet50,
wrn_16_1/16_2/40_1/40_2, vgg8/11/13/16/19 (with BatchNorm), MobileNetV2 (width 0.5), ShuffleV1
and ShuffleV2. Parameter and buffer names match the published teacher checkpoints, so they load
with ``strict=True`` (see :mod:`kdbench.models.checkpoints`).
"""

from kdbench.models.cifar import (  # noqa: F401  (imported for their registration side effect)
    mobilenetv2,
    resnet,
    resnet_imagenet_style,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
