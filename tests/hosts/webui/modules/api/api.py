"""``/sdapi/v1/txt2img`` as the webui's ``Api.text2imgapi`` runs it: default script arguments
from the scripts' ui() controls, ``alwayson_scripts`` args laid over them by script title,
``p.is_api = True``, then ``process_images`` between ``state.begin()`` and ``state.end()``."""

from modules import processing, scripts, shared


class HTTPException(Exception):
    def __init__(self, status_code, detail):
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail


def init_script_args(request: dict, script_runner) -> list:
    script_args = script_runner.default_args()
    for name, entry in (request.get("alwayson_scripts") or {}).items():
        script = script_runner.script(name)
        if script is None:
            raise HTTPException(422, f"always on script {name} not found")
        args = entry.get("args", [])
        for idx in range(min(script.args_to - script.args_from, len(args))):
            script_args[script.args_from + idx] = args[idx]
    return script_args


def text2imgapi(request: dict, script_runner) -> processing.Processed:
    request = dict(request)
    script_args = init_script_args(request, script_runner)
    request.pop("alwayson_scripts", None)
    save = request.pop("save_images", False)
    p = processing.StableDiffusionProcessingTxt2Img(do_not_save_samples=not save, do_not_save_grid=not save,
                                                    **request)
    p.is_api = True
    p.scripts = script_runner
    p.script_args = tuple(script_args)
    shared.state.begin(job="scripts_txt2img")
    try:
        return processing.process_images(p)
    finally:
        shared.state.end()
