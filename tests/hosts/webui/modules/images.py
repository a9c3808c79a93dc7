"""``modules.images``: ``save_image`` (runs ``on_before_image_saved``, writes ``params.image`` to
``params.filename`` as the webui does, through a ``.tmp`` file replaced into place, with the
infotext ``.txt`` beside it when ``save_txt`` is on, then runs ``on_image_saved``) and
``image_grid`` (runs ``on_image_grid`` on the tiles, then draws them)."""

import math
import os

from PIL import Image

from modules import script_callbacks
from modules.shared import opts

saved: list = []  # test aid: (path, the image that was written)


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name="parameters", p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    os.makedirs(path, exist_ok=True)
    fullfn = os.path.join(path, f"{basename or ''}{len(os.listdir(path)):05}-{seed}{suffix}.{extension}")
    pnginfo = existing_info or {}
    if info is not None:
        pnginfo[pnginfo_section_name] = info
    params = script_callbacks.ImageSaveParams(image, p, fullfn, pnginfo)
    script_callbacks.before_image_saved_callback(params)
    stem, ext = os.path.splitext(params.filename)
    params.image.save(stem + ".tmp", format="PNG")
    os.replace(stem + ".tmp", params.filename)
    params.image.already_saved_as = params.filename
    txt = None
    if opts.save_txt and pnginfo.get(pnginfo_section_name) is not None:
        txt = stem + ".txt"
        with open(txt, "w", encoding="utf8") as file:
            file.write(f"{pnginfo[pnginfo_section_name]}\n")
    saved.append((params.filename, params.image))
    script_callbacks.image_saved_callback(params)
    return params.filename, txt


def image_grid(imgs, batch_size=1, rows=None):
    rows = rows or max(1, round(math.sqrt(len(imgs))))
    cols = math.ceil(len(imgs) / rows)
    params = script_callbacks.ImageGridLoopParams(imgs, cols, rows)
    script_callbacks.image_grid_callback(params)
    w, h = map(max, zip(*(img.size for img in imgs)))
    grid = Image.new("RGB", size=(params.cols * w, params.rows * h), color="black")
    for i, img in enumerate(params.imgs):
        grid.paste(img, box=(i % params.cols * w, i // params.cols * h))
    return grid
