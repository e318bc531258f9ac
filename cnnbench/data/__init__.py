"""Datasets as whole-split uint8 tensors, batched on the training device: Fashion-MNIST (and MNIST, KMNIST)
from IDX files, your own image folders, CIFAR-10/100 (:mod:`.sources` picks the reader).

The book feeds its networks through a DataLoader whose worker processes resize every image with PIL.
Here each split is read once into one uint8 tensor (60,000 x 28 x 28 = 47 MB), moved to the training
device, and every batch is gathered, converted to float and resized there (see ``loader.py``).
"""

from .idx import Split, find_data_root
from .loader import DeviceLoader
from .sources import DataSplits, load_splits, settle_dataset

__all__ = ["DataSplits", "DeviceLoader", "Split", "find_data_root", "load_splits", "settle_dataset"]
