"""``modules.processing``: processing objects and ``process_images`` calling the scripts' hooks in
the webui's order. The model is a stand-in: ``model(p, prompts, seeds, hires) -> list of PIL images``
(tests set it); it may push live previews through ``shared.state.assign_current_image``."""

from modules import extra_networks, images, scripts
from modules.shared import opts, state

model = None  # set by tests
save_images_before_highres_fix = False  # the webui option of that name


class StableDiffusionProcessing:
    def __init__(self, prompt="", negative_prompt="", seed=1, batch_size=1, n_iter=1, width=64, height=64,
                 steps=1, do_not_save_samples=False, do_not_save_grid=False, outpath_samples="outputs",
                 outpath_grids="grids", disable_extra_networks=False, override_settings=None, **_unused):
        self.prompt, self.negative_prompt, self.seed = prompt, negative_prompt, seed
        self.batch_size, self.n_iter, self.width, self.height, self.steps = batch_size, n_iter, width, height, steps
        self.do_not_save_samples, self.do_not_save_grid = do_not_save_samples, do_not_save_grid
        self.outpath_samples, self.outpath_grids = outpath_samples, outpath_grids
        self.disable_extra_networks = disable_extra_networks
        self.override_settings = dict(override_settings or {})
        self.extra_generation_params = {}
        self.scripts = None
        self.script_args = []
        self.is_api = False
        self.comments = {}
        self.iteration = 0
        self.batch_index = 0
        self.all_prompts = self.all_negative_prompts = self.all_seeds = None
        self.prompts = self.negative_prompts = self.seeds = self.subseeds = None
        self.extra_network_data = None

    def setup_prompts(self):
        n = self.batch_size * self.n_iter
        self.all_prompts = list(self.prompt) if isinstance(self.prompt, list) else n * [self.prompt]
        self.all_negative_prompts = n * [self.negative_prompt]
        self.main_prompt = self.all_prompts[0]

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def save_samples(self):
        return opts.samples_save and not self.do_not_save_samples

    def comment(self, text):
        self.comments[text] = 1


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, hr_prompt="", **kwargs):
        super().__init__(**kwargs)
        self.enable_hr, self.hr_prompt = enable_hr, hr_prompt
        self.all_hr_prompts = self.hr_prompts = self.hr_extra_network_data = None
        self.is_hr_pass = False

    def setup_prompts(self):
        super().setup_prompts()
        if self.enable_hr:
            hr = self.hr_prompt or self.prompt
            self.all_hr_prompts = list(hr) if isinstance(hr, list) else self.batch_size * self.n_iter * [hr]

    def parse_extra_network_prompts(self):
        super().parse_extra_network_prompts()
        if self.enable_hr:
            batch = self.all_hr_prompts[self.iteration * self.batch_size:(self.iteration + 1) * self.batch_size]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(batch)


class Processed:
    def __init__(self, p, images_list, infotexts=None):
        self.images = images_list
        self.infotexts = infotexts or []
        self.info = self.infotexts[0] if self.infotexts else ""
        self.comments = "".join(f"{c}\n" for c in p.comments)
        self.extra_generation_params = p.extra_generation_params
        self.all_prompts = p.all_prompts


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    """Values of ``p.extra_generation_params`` may be str, a list indexed by ``index``, or a callable
    called with this function's locals."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    generation_params = {"Steps": p.steps, "Seed": all_seeds[index], "Size": f"{p.width}x{p.height}",
                         **p.extra_generation_params}
    for key, value in generation_params.items():
        if isinstance(value, list):
            generation_params[key] = value[index]
        elif callable(value):
            generation_params[key] = value(**locals())
    text = ", ".join(f"{k}: {v}" for k, v in generation_params.items() if v is not None)
    return f"{prompt_text}\n{text}"


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    for k, v in p.override_settings.items():
        opts.set(k, v, is_api=True, run_callbacks=False)
    p.setup_prompts()
    p.all_seeds = [int(p.seed) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts, output_images = [], []
    for n in range(p.n_iter):
        p.iteration = n
        batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
        p.seeds = p.subseeds = p.all_seeds[batch]
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        p.parse_extra_network_prompts()
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        batch_images = model(p, p.prompts, p.seeds, False)
        if getattr(p, "enable_hr", False):
            if p.save_samples() and save_images_before_highres_fix:
                for i, image in enumerate(batch_images):
                    images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], p=p,
                                      suffix="-before-highres-fix")
            p.is_hr_pass = True
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.hr_extra_network_data)
            if p.scripts is not None:
                p.scripts.before_hr(p)
            batch_images = model(p, p.hr_prompts, p.seeds, True)
            p.is_hr_pass = False
        state.nextjob()
        if p.scripts is not None:
            p.scripts.postprocess_batch(p, batch_images, batch_number=n)
            p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]

        def infotext(index=0, use_main_prompt=False):
            return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt, index=index)

        for i, image in enumerate(batch_images):
            p.batch_index = i
            if p.scripts is not None:
                pp = scripts.PostprocessImageArgs(image)
                p.scripts.postprocess_image(p, pp)
                image = pp.image
                pp = scripts.PostprocessImageArgs(image)  # no inpaint overlay: the same image object
                p.scripts.postprocess_image_after_composite(p, pp)
                image = pp.image
            if p.save_samples():
                images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], info=infotext(i), p=p)
            infotexts.append(infotext(i))
            output_images.append(image)
    if (opts.return_grid or opts.grid_save) and len(output_images) >= 2:
        grid = images.image_grid(output_images, p.batch_size)
        if opts.return_grid:
            infotexts.insert(0, infotext(use_main_prompt=True))
            output_images.insert(0, grid)
        if opts.grid_save and not p.do_not_save_grid:
            images.save_image(grid, p.outpath_grids, "grid", p.all_seeds[0], p.all_prompts[0],
                              info=infotext(use_main_prompt=True), p=p, grid=True)
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    res = Processed(p, output_images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
