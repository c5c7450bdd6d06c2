"""crbp-detectron: contractor recurrent back-propagation (C-RBP) for Detectron2.

`crbp_detectron.crbp` is the algorithm (pure PyTorch). Importing `crbp_detectron.modeling`
registers the Detectron2 components (it needs Detectron2); importing this package does so when
Detectron2 is installed, so `import crbp_detectron` is enough before building a model.
"""
__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
except ImportError:  # the core stays usable without Detectron2
    HAS_DETECTRON2 = False
else:
    HAS_DETECTRON2 = True

if HAS_DETECTRON2:
    from . import modeling  # noqa: F401  (registers components)
    from .config import add_crbp_config  # noqa: F401
