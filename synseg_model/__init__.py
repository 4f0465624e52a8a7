"""SynSeg: open-vocabulary semantic segmentation (pure PyTorch; no ROS, no training code).

    from synseg_model import Segmenter
    seg = Segmenter.from_checkpoint()            # the offline default model; or a name: list_pretrained()
    seg.set_vocabulary(["circle", "grass"])
    out = seg.segment(rgb)                      # out.masks: (K, H, W) bool
"""
from .config import SynSegConfig
from .factory import create_model, get_model_config, list_models, load_checkpoint, load_hf_clipseg
from .losses import mccl_loss
from .model import SynSeg, SynSegOutput
from .pretrained import card_summary, default_checkpoint_path, list_pretrained, resolve_checkpoint
from .runtime import Segmentation, Segmenter, image_to_tensor
from .state_dicts import CheckpointError
from .weights import convert_hf_clipseg, load_clipseg_decoder, read_checkpoint, save_checkpoint

__all__ = [
    "CheckpointError", "Segmentation", "Segmenter", "SynSeg", "SynSegConfig", "SynSegOutput", "card_summary",
    "convert_hf_clipseg", "create_model", "default_checkpoint_path", "get_model_config", "image_to_tensor",
    "list_models", "list_pretrained", "load_checkpoint", "load_clipseg_decoder", "load_hf_clipseg", "mccl_loss",
    "read_checkpoint", "resolve_checkpoint", "save_checkpoint",
]
