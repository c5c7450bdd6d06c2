"""Inference on image files: robust image reading, a Detectron2 predictor for a config + weights,
and writing the visualization plus COCO-format panoptic PNG and JSON (like Detectron2's demo)."""
import json
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class InputImageError(ValueError):
    """An input image cannot be used; the message names the file and why."""


def read_image_rgb(path: str) -> np.ndarray:
    """Any image file as HxWx3 uint8 RGB: grayscale, palette, 16-bit and RGBA (composited on
    white) inputs are converted; EXIF orientation is applied."""
    if not os.path.isfile(path):
        raise InputImageError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                span = max(arr.max() - arr.min(), 1.0)
                im = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, rgba)
            rgb = np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise InputImageError(f"{path}: too large to decode ({e}); downscale it") from None
    except (OSError, SyntaxError) as e:
        raise InputImageError(f"{path}: not a readable image ({e})") from None
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InputImageError(f"{path}: empty image")
    return np.ascontiguousarray(rgb)


def list_images(inputs: List[str], repeated: Optional[List[str]] = None) -> List[str]:
    """Files and folders (their image files, sorted; sub-folders are not entered, whatever their
    name) -> image paths, each file once: a file given again (or through a link) is appended to
    `repeated` instead."""
    paths, seen = [], set()
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f)))
            if not found:
                raise InputImageError(f"{item}: folder contains no image file ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            found = [item]
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
            elif repeated is not None:
                repeated.append(path)
    return paths


def output_names(paths: List[str]) -> List[str]:
    """A distinct output name for every input path: its file stem where that is unique; where stems
    collide (a.jpg and a.png, or dir1/a.jpg and dir2/a.jpg), the file name, then parent folders
    joined by "__", then a counter."""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep)[1:] for p in paths]

    def name(i, level):
        if level == 0:
            return os.path.splitext(parts[i][-1])[0]
        return "__".join(parts[i][-level:])

    levels = [0] * len(paths)
    while True:
        names = [name(i, level) for i, level in enumerate(levels)]
        groups = {}
        for i, n in enumerate(names):
            groups.setdefault(n, []).append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return names
        grew = False
        for group in clashes:
            for i in group:
                if levels[i] < len(parts[i]):
                    levels[i] += 1
                    grew = True
        if not grew:  # cannot happen for distinct paths; kept as a guarantee
            return [f"{n}_{i}" for i, n in enumerate(names)]


class Predictor:
    """A model from a config and weights, run on RGB arrays of any size."""

    def __init__(self, cfg):
        from detectron2.data import MetadataCatalog
        from detectron2.modeling import build_model

        from .checkpoint import Checkpointer

        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        Checkpointer(self.model).load(cfg.MODEL.WEIGHTS)
        names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        if not names:
            raise ValueError("DATASETS.TEST and DATASETS.TRAIN are empty: the predictor takes the class names from "
                             "the first dataset of either")
        self.metadata = MetadataCatalog.get(names[0])
        if not self.metadata.get("thing_classes", None):
            raise ValueError(f"dataset {names[0]!r} has no class names (metadata thing_classes): register it (for "
                             "your own data: --dataset, or the training run's OUTPUT_DIR/config.yaml)")
        self.min_size, self.max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: only BGR and RGB inputs are supported here")

    def resized_shape(self, height: int, width: int):
        """Detectron2's ResizeShortestEdge at test time."""
        scale = self.min_size / min(height, width)
        new_h, new_w = height * scale, width * scale
        if max(new_h, new_w) > self.max_size:
            scale = self.max_size / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray, name: str = "image") -> Dict:
        from detectron2.data import transforms as T

        height, width = rgb.shape[:2]
        new_h, new_w = self.resized_shape(height, width)
        if min(new_h, new_w) < 1:
            raise InputImageError(
                f"{name}: a {width}x{height} image is too elongated: resized to fit INPUT.MAX_SIZE_TEST="
                f"{self.max_size} its short side would be under one pixel. Crop it, or raise INPUT.MAX_SIZE_TEST.")
        image = rgb[:, :, ::-1] if self.cfg.INPUT.FORMAT == "BGR" else rgb
        image = T.ResizeTransform(height, width, new_h, new_w).apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]


def panoptic_record(panoptic_seg: torch.Tensor, segments_info: List[dict], metadata, file_name: str,
                    image_id) -> Dict:
    """COCO panoptic result entry: dataset category ids, segment ids as in the PNG."""
    thing_ids = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    stuff_ids = {v: k for k, v in metadata.get("stuff_dataset_id_to_contiguous_id", {}).items()}
    segments = []
    for seg in segments_info:
        isthing = bool(seg["isthing"])
        category = (thing_ids if isthing else stuff_ids)[seg["category_id"]]
        entry = {"id": int(seg["id"]), "category_id": int(category), "isthing": isthing,
                 "area": int((panoptic_seg == seg["id"]).sum())}
        if "score" in seg:
            entry["score"] = float(seg["score"])
        segments.append(entry)
    return {"image_id": image_id, "file_name": file_name, "segments_info": segments}


def save_prediction(outputs: Dict, rgb: np.ndarray, metadata, out_dir: str, stem: str) -> Dict:
    """Writes <stem>_vis.png (Detectron2's Visualizer) and panoptic/<stem>.png (COCO panoptic
    PNG: segment id as R + 256 G + 256^2 B); returns the JSON entry."""
    from detectron2.utils.visualizer import ColorMode, Visualizer

    from panopticapi.utils import id2rgb

    os.makedirs(os.path.join(out_dir, "panoptic"), exist_ok=True)
    # Small images are drawn enlarged, so that labels stay readable.
    scale = min(4.0, max(1.0, 384 / max(rgb.shape[:2])))
    visualizer = Visualizer(rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in outputs:
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        panoptic_seg = panoptic_seg.cpu()
        vis = visualizer.draw_panoptic_seg_predictions(panoptic_seg, segments_info)
        Image.fromarray(id2rgb(panoptic_seg.numpy())).save(os.path.join(out_dir, "panoptic", stem + ".png"))
        record = panoptic_record(panoptic_seg, segments_info, metadata, stem + ".png", stem)
    elif "instances" in outputs:
        vis = visualizer.draw_instance_predictions(outputs["instances"].to("cpu"))
        record = {"image_id": stem, "file_name": None, "segments_info": []}
    else:
        raise ValueError("the model returned neither panoptic_seg nor instances")
    Image.fromarray(vis.get_image()).save(os.path.join(out_dir, stem + "_vis.png"))
    return record


def predict_files(predictor: Predictor, paths: List[str], out_dir: str, on_error: str = "raise",
                  progress: bool = True) -> Dict:
    """Runs the predictor on every path; writes the pictures and predictions.json. With
    on_error="skip", unreadable inputs are reported in the JSON's "errors" instead of raising.
    predictions.json is written whatever happens: if an input stops the run, it holds the images
    done before it, and the error."""
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    annotations, errors = [], []
    try:
        for path, stem in tqdm(list(zip(paths, output_names(paths))), desc="predict", unit="img",
                               disable=not progress):
            try:
                rgb = read_image_rgb(path)
                outputs = predictor(rgb, name=path)
            except InputImageError as e:
                errors.append(str(e))
                if on_error == "raise":
                    raise
                continue
            record = save_prediction(outputs, rgb, predictor.metadata, out_dir, stem)
            record["input"] = path
            annotations.append(record)
    finally:
        result = {"annotations": annotations, "categories": prediction_categories(predictor.metadata),
                  "errors": errors}
        with open(os.path.join(out_dir, "predictions.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


def prediction_categories(meta) -> List[dict]:
    """COCO panoptic categories (dataset ids) of a dataset's metadata."""
    categories = [{"id": k, "name": meta.thing_classes[v], "isthing": 1}
                  for k, v in meta.get("thing_dataset_id_to_contiguous_id", {}).items()]
    categories += [{"id": k, "name": meta.stuff_classes[v], "isthing": 0}
                   for k, v in meta.get("stuff_dataset_id_to_contiguous_id", {}).items() if v != 0]
    return categories
