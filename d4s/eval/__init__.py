"""Evaluation (``make eval``, ``python -m d4s.eval``): the protocol of paper Sec. 4.2, Appendix D and Appendix E.
Generate a scene list along fixed camera trajectories with one checkpoint, render every generation and score them.

Samples. Per scene (a captioned first frame, with its real video where the source has one):

- the paper's five trajectories ``spiral, forward, backward, upward, downward`` (Sec. 4.2: 32 scenes x 5 = 160
  samples), each scored by RPE (Table 3) and by the feature metrics of Tables 1-2;
- ``orbit``: a closed 360 degree orbit, scored by cycle PSNR (Appendix E, Table 6). The video compared is the
  generation's own (frame ``t`` shows scene time ``t`` from camera ``t``), so the first frame is time 0 and the last
  time ``T - 1`` from the same camera: the loop closes only if the deformation returns the scene to how it looked.
  (At one fixed time an explicit scene renders a closed loop identically, an infinite PSNR that says nothing.);
- ``scene`` (scenes with a real video only): the real cameras, re-expressed relative to frame 0, with the real
  intrinsics; the renders are compared with the real frames (PSNR, SSIM, LPIPS over frames ``1..T-1``, the views
  the model did not see) and depth (AbsRel, delta1 over all frames, after ``depth_alignment``; the Pearson
  correlation of Eq. 4), over the pixels the render covers (``depth_coverage``: their share of the valid real ones). Where the clip has 3D tracks, the generated deformation is compared with their motion
  (the quantity Eq. 5 trains): each track's Gaussian (the pixel-aligned one under it in a frame where it is visible)
  is displaced by the field to every other frame's time, against the track's true displacement, over the pairs
  that move at least ``motion_min_displacement``: cosine, end-point error and both magnitudes. The generator is also
  scored apart from the LDRM: the sampled latents against the real video's, per latent frame, beside frame 0's
  latents held still (:func:`generator_metrics`); and the render at ``t = 0`` against the input (``psnr_t0``). Ours,
  not the paper's.
- ``latents`` (scenes with a real video, ``metrics.latent_reconstruction``): no generation; the LDRM reads the real
  clip's VAE latents (:meth:`~d4s.pipeline.Diff4SplatPipeline.reconstruct`) and is scored as ``scene``. It measures
  the reconstruction model on its own, in particular motion: how an object moves after the first frame is not
  determined by that frame (toy4d's objects move in random directions), but it is in the video's latents.

Scene sources (``scenes`` in the config): annotated shards (``index`` + ``split``, or a ``shards`` pattern; each clip's
first ``frames`` frames at ``frame_step``, centre-cropped to the eval size, as the data pipeline reads them), and/or
``images``: a folder of images or a ``.txt`` list ``path<TAB>prompt`` (as ``d4s.generate --image`` reads it), which
have no real video and so only get the video-free metrics. Named trajectories use the first frame's intrinsics
(images: ``fov``) and ``scene_scale`` metres (``null``: the median real depth of frame 0, else 2 m as
``d4s.generate``).

Seeds. Sample ``(scene, trajectory)`` uses ``seed = (base seed * 1000003 + crc32("scene/trajectory")) mod 2^31``,
the same on every run and every machine.

Run folder. ``samples/<scene>/<trajectory>/``: ``rgb.mp4`` (the render, H.264 at ``video_crf``), ``cameras.json``,
``features.json`` (per-sample values of the weight-needing metrics and the weight paths and settings they came from;
others recompute them), ``i3d.npy`` (FVD features) and ``metrics.json``
(written last: the sample's settings and weight-free metrics, computed on the exact render). A re-run skips samples
whose ``metrics.json`` holds the same settings; when the configured weights change, the feature metrics of
``features.json`` are all computed again from ``rgb.mp4`` (no generation). ``real/<scene>/i3d_<T>x<H>x<W>.npy``: features of the real
clips. Each I3D cache records the weights file and the video content it came from, and is recomputed otherwise.
Every file is written atomically. The report (``d4s.eval.report``) is written from these files.

Weight-needing metrics load their networks from the local paths under ``weights`` (``d4s.eval.extractors``); a
missing path is reported as skipped with the file named, never replaced by a stand-in. ``random_init_consistency``
adds a frame consistency on a randomly initialised ResNet-18, marked in the report as not comparable to the paper.

Modules, by job: :mod:`~d4s.eval.config` (the config and the protocol's vocabulary), :mod:`~d4s.eval.scenes` (scene
lists), :mod:`~d4s.eval.samples` (planning, seeds, caching and generating a sample), :mod:`~d4s.eval.scoring` (the
per-sample and distribution metrics, from the maths in :mod:`~d4s.eval.metrics`), :mod:`~d4s.eval.run` (the run)
and :mod:`~d4s.eval.report` (the report).
"""
