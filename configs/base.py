"""Settings every base model shares: the diffusion schedule and DDIM sampling.

Base-model configs (afhq.py, celeba.py, church.py, bedroom.py) add ``model`` and
``checkpoint``; target-domain configs (galaxy.py, ...) choose a base and data.
"""

import ml_collections
from ml_collections.config_dict import FieldReference, placeholder


def get_config():
  config = ml_collections.ConfigDict()
  config.name = "base"
  config.seed = 0
  # A checkpoint directory written by `python -m convert` (or `train`).
  config.checkpoint = placeholder(str)
  config.model = ml_collections.ConfigDict()

  # The real bases were trained with linear betas 1e-4..0.02 over T = 1000.
  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.beta_schedule = "linear"  # 'linear', 'cosine' or 'quadratic'.
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.diffusion.num_timesteps = 1000

  # Deterministic DDIM inversion / generation (docs/method.md).
  config.sampling = ml_collections.ConfigDict()
  # An integer, or 'auto': the largest t_0 at which the few-shot images still
  # reconstruct within t_0_tolerance (docs/method.md, "t_0 from the data"). The field
  # holds either, so it is typed `object`.
  config.sampling.t_0 = FieldReference(900, field_type=object)
  config.sampling.t_0_tolerance = placeholder(float)  # 'auto' only; None: the default (0.1)
  config.sampling.t_0_max = placeholder(int)  # 'auto' only: the largest t_0 it may choose (None: 900)
  config.sampling.n_steps = 80
  config.sampling.eta = 0.0
  config.sampling.batch_size = 8  # per device (the global batch is this x the number of devices)

  # Inputs. Target-domain configs set the folders.
  config.data = ml_collections.ConfigDict()
  config.data.ood_dir = placeholder(str)  # the few-shot images of the new (out-of-domain) target domain
  config.data.id_dir = placeholder(str)  # optional in-domain reference images
  config.data.eval_dir = placeholder(str)  # optional held-out target images for evaluation
  config.data.resize = "stretch"  # 'stretch' (official: whole image to a square) or 'center_crop'
  config.data.resample = "lanczos"  # PIL filter (the official code uses LANCZOS/ANTIALIAS)
  config.data.alpha = "black"  # transparent pixels over 'black' or 'white', or 'drop' alpha
  config.data.on_bad_file = "skip"  # 'skip' (report and go on) or 'error' (stop at the first)
  config.data.max_files = placeholder(int)  # use only the first N files (None: all)
  config.data.format = "auto"  # 'auto' (by extension), 'image' or 'scientific' (FITS/.npy/.npz)
  # Scientific inputs (see discovery_jax.data.scientific): which HDU / cube planes,
  # how NaN/Inf pixels are filled, and the intensity transform fitted on the
  # few-shot set and inverted on generated samples (physical units back).
  config.data.hdu = placeholder(str)  # index or EXTNAME; None: the first HDU with image data
  config.data.cube_axis = placeholder(int)  # None: FITS NAXIS3 / the last .npy axis
  # "all" or a tuple of plane indices / a tuple of 1 or 3 plane indices; "" (not set): these two
  # take a string or a tuple, which no single-typed ml_collections placeholder can hold.
  config.data.cube_slices = ""  # one sample per plane
  config.data.cube_channels = ""  # one multi-channel sample
  config.data.npz_key = placeholder(str)  # None: the file's only array
  config.data.fill = "median"  # NaN/Inf fill: 'median', 'zero', 'min' or a number
  config.data.same_size = True  # refuse sets whose files differ in size
  config.data.scientific_resample = "auto"  # area-average down, bilinear up
  config.data.transform = ml_collections.ConfigDict()
  config.data.transform.kind = "asinh"  # 'linear' (min-max), 'log' (log10 + offset) or 'asinh'
  config.data.transform.per_channel = False
  config.data.transform.clip_percentiles = ()  # e.g. (0.5, 99.5); the one lossy step
  config.data.transform.offset = ml_collections.config_dict.placeholder(float)  # log: None = automatic
  config.data.transform.softening = ml_collections.config_dict.placeholder(float)  # asinh: None = 1.4826 MAD

  # Reconstruction (python -m discovery_jax.reconstruct).
  config.reconstruct = ml_collections.ConfigDict()
  config.reconstruct.input_dir = placeholder(str)  # None: data.ood_dir
  config.reconstruct.grid_rows = 8  # images per grid file

  # Sampling new images of the target domain (python -m discovery_jax.sample).
  config.sample = ml_collections.ConfigDict()
  config.sample.methods = ("discovery",)  # any of 'discovery', 'gaussian', 'renoise' (baselines)
  config.sample.num_samples = 64
  config.sample.evaluate = True  # evaluate against data.eval_dir when it is set

  # Latent discovery (docs/method.md; discovery_jax.discovery). Every target and
  # tolerance is computed from the banks and the few-shot images; these settings only scale them.
  config.discovery = ml_collections.ConfigDict()
  # 'typical' (default): residual steps from few-shot latents toward prior draws, judged on their
  # denoised images against the few-shot set's own leave-one-out statistics (see README "Embedded
  # demo" for what it wins and loses). 'rejection': the paper's procedure (slerp + latent criteria),
  # unchanged; 'optimize': the paper's criteria met by Adam.
  config.discovery.mode = "typical"
  # typical: the step toward the prior, drawn per candidate (0: the source latent, 1: all the step). None: from
  # the step's power, (0.1, 0.7) for white steps to (0.2, 0.9) for the inverse filter (docs/method.md)
  config.discovery.strength_range = placeholder(tuple)
  config.discovery.band = (0.1, 0.7)  # typical: few-shot leave-one-out NN-distance quantiles kept
  # typical, balance='distance' or 'both': equal-mass bins of the band, each holding an equal share (1: first come)
  config.discovery.distance_bins = 4
  # typical: what the accepted images are shared out over: 'both' (each counts against its few-shot cell AND its
  # distance bin), 'fewshot' (a cell per few-shot image, the accepted images nearest to it: every neighbourhood of
  # the target set represented) or 'distance' (the bins above)
  config.discovery.balance = "both"
  # typical: after this many candidates per sample, stop once accepted + set-aside (full-cell) candidates make up
  # the number asked and fill in with the set-aside ones. None: search the whole pool for a balanced set
  config.discovery.fill_after = FieldReference(4, field_type=object)
  # typical: the step's share toward ANOTHER few-shot latent instead of a prior draw (0: prior draws,
  # 1: mixes of two few-shot latents), and whether that partner is one of the source's k nearest latents
  config.discovery.partner_weight = 0.0
  config.discovery.partner_neighbours = placeholder(int)  # None: any other few-shot latent
  config.discovery.separation_quantile = 0.05  # typical: closer than this few-shot quantile = the same image
  # typical: two images from ONE few-shot source must lie further apart, this quantile of the few-shot images'
  # leave-one-out distances (None: the separation above for every pair)
  config.discovery.sibling_separation_quantile = FieldReference(None, field_type=object)
  config.discovery.pool_factor = 8  # typical: at most this many candidates per sample
  config.discovery.image_guard = True  # typical: drop images on the model's own side (mode interference)
  # typical guard: 'discriminant' (few-shot vs the model's own images, a shrinkage linear discriminant whose
  # threshold passes all but guard_quantile of the few-shot images, each left out of the fit) or 'nearest'
  # (closer to an own image than to any few-shot image: the previous default)
  config.discovery.guard_kind = "discriminant"
  config.discovery.guard_features = (
      "model"  # typical guard's feature space: 'model' (the base model's h-space) or an extractor
  )
  config.discovery.guard_quantile = 0.1
  config.discovery.guard_shrinkage = 1.0  # covariance shrinkage toward this x its mean eigenvalue
  # typical: the feature space the band and separation are measured in: an extractor name or "model" (the base
  # model's own h-space, as the guard; measured in docs/method.md); not the evaluation's network, or the
  # evaluation would score what the search optimised
  config.discovery.selection_features = "random_conv"
  # typical: measure band and separation distances in selection features z-scored per channel by the
  # few-shot images' variance + this x its mean (0: plain z-scores). None: the raw features (the default:
  # no setting of it won on every benchmark domain; docs/method.md)
  config.discovery.selection_shrinkage = placeholder(float)
  # typical: also measure the band in z-scores with this shrinkage (far in either view is far, a copy
  # only if a copy in both). None: off (the default: it trades novelty for FD; docs/method.md)
  config.discovery.standardized_check = placeholder(float)
  # typical: a pool that runs out short fills the open places with the candidates that missed the band by the
  # least (flagged 'near_miss' in latents_meta.npz). False: stop with a budget error instead
  config.discovery.fill_near_misses = True
  # typical: candidate g of the pool takes its strength from the g-th equal slice of strength_range, so the
  # search tries the gentlest steps first (False: drawn uniformly; measured in docs/method.md)
  config.discovery.strength_sweep = False
  # typical, balance "both": the fill-in gives up few-shot cells before distance bins (False: in order)
  config.discovery.fill_keeps_bins = False
  # typical: True sends the fill-in to the few-shot cells holding the fewest accepted images first (lower FD,
  # lower novelty: docs/method.md); False, the default: in order
  config.discovery.fill_spreads = False
  # typical: the step's power per spatial frequency follows the few-shot residuals' own raised to this
  # (-1: mostly fine detail, the layout stays the source's and the model re-draws the detail; 0: white noise;
  # 'auto', the default: the residuals' spectral slope between -1 and 0, white where no layout dominates;
  # discovery/step_spectrum.py). A nonzero number needs image latents (H, W, C)
  config.discovery.step_spectrum = FieldReference("auto", field_type=object)  # a number or 'auto'
  # typical: a candidate whose log power per octave band of spatial frequency lies further from the few-shot
  # images' than all but this quantile of them (each left out) is too far (discovery/spectral_envelope.py;
  # measured in docs/method.md). None: off
  config.discovery.spectral_guard = FieldReference(0.1, field_type=object)  # a quantile or None
  # typical: a pool that runs out short searches this many more candidates per requested sample before taking
  # near misses, their strengths drawn where the first pool's candidates passed (discovery/typical.py
  # rescue_law; measured in docs/method.md). None or 0: no rescue
  config.discovery.rescue_factor = placeholder(int)
  config.discovery.num_interior = 20  # slerp points per (OOD latent, prior draw) pair (official: 20)
  config.discovery.num_refs = 10  # reference latents per criterion (official R = 10)
  config.discovery.max_per_path = placeholder(int)  # accepted points kept per slerp path (None: all, official)
  config.discovery.tolerance_scale = 1.0  # tolerance = this x the spread among real OOD latents
  # 'pooled' (one scalar variance), 'diagonal', or 'published_head' (the published HEAD: fitted on the
  # ID bank with np.var over all entries, 1.036x the pooled per-dimension variance on its banks)
  config.discovery.prior_kind = "pooled"
  # rejection with a pooled prior: draw each path's prior sample through its inner products with the
  # banks (same law, far cheaper; docs/method.md); False (and optimize mode): full sample_prior draws
  config.discovery.span_draws = True
  config.discovery.guard = "mean_diff"  # mode-interference guard: 'mean_diff', 'logistic' or 'none'
  config.discovery.guard_margin = 0.0
  config.discovery.opt_steps = 200
  config.discovery.opt_lr = 1.0
  config.discovery.max_candidates = placeholder(int)  # candidate budget (None: 1000 x num_samples)
  config.discovery.id_source = "generate_invert"  # ID bank when data.id_dir is empty: see inversion.model_id_bank
  config.discovery.num_id_latents = 64
  config.discovery.renoise_strength = 0.5  # the 'renoise' baseline: 0 copies, 1 is a fresh prior draw

  # python -m discovery_jax.analyze
  config.analyze = ml_collections.ConfigDict()
  config.analyze.num_dims = 1000  # dimensions tested for normality
  config.analyze.num_triples = 2000  # random triangles for vertex angles

  # Outputs of `sample`: always a tfds dataset (array_record shards) and samples.npy.
  config.output = ml_collections.ConfigDict()
  config.output.formats = ("png", "fits")  # individual PNG files; FITS for scientific data
  config.output.shard_size = 256
  config.output.store_latents = True  # keep each sample's latent in the dataset
  config.output.grid_size = 64

  # Training from scratch (python -m discovery_jax.train).
  config.train = ml_collections.ConfigDict()
  config.train.data = placeholder(str)  # a folder of images, or an .npz holding 'images'
  config.train.steps = 10000
  config.train.batch_size = 64
  config.train.learning_rate = 2e-4
  config.train.warmup_steps = 500
  config.train.grad_clip = 1.0
  config.train.ema_decay = 0.999
  config.train.weight_decay = 0.0
  config.train.hflip = False
  config.train.seed = 0
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2
  config.train.num_preview = 16

  # The vanilla fine-tuning baseline (python -m discovery_jax.finetune).
  config.finetune = ml_collections.ConfigDict(config.train.to_dict())
  config.finetune.data = placeholder(str)  # None: data.ood_dir (the few-shot set)
  config.finetune.steps = 1000
  config.finetune.batch_size = 8
  config.finetune.learning_rate = 2e-5
  config.finetune.warmup_steps = 50
  config.finetune.ema_decay = 0.99
  config.finetune.checkpoint_every = 200
  config.finetune.num_samples = 64  # unconditional samples of the base and the fine-tuned model

  # Evaluation (python -m discovery_jax.evaluate; also run by `sample` when
  # config.sample.evaluate is set and held-out data exist).
  config.evaluate = ml_collections.ConfigDict()
  config.evaluate.features = "inception"  # 'inception' (FID; needs inception_path), 'learned' (32x32), 'random_conv'
  config.evaluate.inception_path = placeholder(str)  # a folder written by `python -m convert.inception`
  config.evaluate.id_dir = placeholder(str)  # held-out in-domain images (None: data.id_dir)
  config.evaluate.generated = placeholder(str)  # "name=path,..." (None: WORKDIR/samples/*/samples.npy)
  config.evaluate.finetune_dir = placeholder(str)  # a `finetune` workdir: the vanilla fine-tuning baseline
  config.evaluate.kid_subset_size = 100
  config.evaluate.seed = 0
  config.evaluate.figure_samples = 12  # images per set in evaluation/comparison.png

  # Devices: a data-parallel mesh over all local devices (see discovery_jax.parallel).
  config.parallel = ml_collections.ConfigDict()
  config.parallel.num_devices = placeholder(int)  # None: every local device
  return config
