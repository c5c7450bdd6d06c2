"""Pure-Python stand-in for detectron2's compiled extension ``detectron2._C``.

Installed by crbp-detectron's tools/install_detectron2.py: this detectron2 was installed from
the pure-Python sources, without detectron2's C++/CUDA extension. Everything that does not need
a compiled op works (e.g. Panoptic FPN: it uses torchvision's RoIAlign and NMS). Asking this
module for a compiled op raises ``CompiledOpUnavailableError`` (a ``NotImplementedError``) that
names the op. To get the ops, build detectron2 from source with its C++/CUDA extension.
"""

IS_STANDIN = True
BUILD_ID = "@BUILD_ID@"  # the installer writes its build fingerprint here
INSTALL_DOCS_URL = "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
# The ops of detectron2 0.6's compiled extension (documentation: any name raises the same error).
COMPILED_OPS = (
    "deform_conv_forward", "deform_conv_backward_input", "deform_conv_backward_filter",
    "modulated_deform_conv_forward", "modulated_deform_conv_backward",
    "roi_align_rotated_forward", "roi_align_rotated_backward", "box_iou_rotated",
    "nms_rotated", "InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate",
    "get_compiler_version", "get_cuda_version", "has_cuda",
)
SUMMARY = (
    "pure-Python stand-in, no compiled C++/CUDA ops (deformable conv, rotated RoIAlign/IoU/NMS, "
    "fast COCOeval); build detectron2 from source to get them: " + INSTALL_DOCS_URL
)
_COCOEVAL_OPS = ("InstanceAnnotation", "COCOevalEvaluateImages", "COCOevalAccumulate")


class CompiledOpUnavailableError(NotImplementedError):
    """A compiled detectron2 op was requested from the pure-Python stand-in."""


def _message(name):
    msg = (
        "detectron2._C.%s is not available: this detectron2 is a pure-Python build, "
        "installed without detectron2's compiled C++/CUDA extension, so the op %r "
        "cannot run. To use it, build detectron2 from source with its C++/CUDA extension "
        "(see %s)." % (name, name, INSTALL_DOCS_URL)
    )
    if name in _COCOEVAL_OPS:
        return msg + " For COCO evaluation without it, use COCOEvaluator(..., use_fast_impl=False)."
    return msg + " (For COCO evaluation, use COCOEvaluator(..., use_fast_impl=False).)"


def __getattr__(name):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    raise CompiledOpUnavailableError(_message(name))


def __dir__():
    return ["BUILD_ID", "COMPILED_OPS", "CompiledOpUnavailableError", "INSTALL_DOCS_URL",
            "IS_STANDIN", "SUMMARY"]
