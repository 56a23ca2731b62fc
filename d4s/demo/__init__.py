"""The embedded demo (``make demo``, ``python -m d4s.demo``): the whole job end to end on built-in data, on a CPU.

1. **data**: annotate the synthetic toy4d dataset into shards (``python -m annotation``);
2. **train**: stage 0, the video DiT alone on the flow-matching loss (standing in for the pretrained CogVideoX the
   paper starts from), then the three tiny stages of the progressive scheme (Sec. 3.4), each handing its weights to
   the next (``python -m d4s.fit`` on configs derived from ``configs/tiny/stage{0,1,2,3}.yaml``);
3. **baseline**: the same models untrained (random initialisation), the reference for "it learned";
4. **generate**: from the first frames of held-out toy4d clips, along their real cameras and a novel spiral
   (``python -m d4s.generate``: videos, depth, ``.ply`` sequences);
5. **evaluate**: ``make eval``'s weight-free metrics (:mod:`d4s.eval`) for the trained and the untrained model,
   among them the generator's sampled latents against the real video's, plus a ground-truth reference (frame 0
   lifted with its true depth);
6. **summary**: ``SUMMARY.md``, ``summary.json``, a contact sheet and the loss curves.

Every phase resumes: a killed demo continues where it stopped when run again. :mod:`d4s.demo.plan` holds the two
sizes (the default and ``--fast``), :mod:`d4s.demo.run` the phases, :mod:`d4s.demo.summary` the report.
"""
