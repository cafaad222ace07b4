"""Pure tensor ops: MATLAB-compatible resizing, HR->LR degradations, colour conversion."""

from drn_lightning.ops.color import quantize as quantize
from drn_lightning.ops.color import rgb_to_y as rgb_to_y
from drn_lightning.ops.degrade import DEGRADATIONS as DEGRADATIONS
from drn_lightning.ops.degrade import bd_downsample as bd_downsample
from drn_lightning.ops.degrade import bicubic_downsample as bicubic_downsample
from drn_lightning.ops.degrade import lr_pyramid as lr_pyramid
from drn_lightning.ops.degrade import nearest_downsample as nearest_downsample
from drn_lightning.ops.imresize import cubic as cubic
from drn_lightning.ops.imresize import imresize as imresize
from drn_lightning.ops.imresize import imresize_output_size as imresize_output_size
from drn_lightning.ops.imresize import resize_weights as resize_weights
