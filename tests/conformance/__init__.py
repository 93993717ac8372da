"""Independent re-encodings of the reference trackers' label-propagation rules.

One module per released evaluation script (docs/protocols.md has the file:line citations):

- `crw`:       ajabri/videowalk code/test.py + code/utils/test_utils.py + code/data/vos.py
- `dino`:      facebookresearch/dino eval_video_segmentation.py
- `uvc`:       Liusifei/UVC test.py + libs/test_utils.py + libs/model.py
- `cycletime`: xiaolonw/TimeCycle test_davis.py + models/videos/model_test.py + models/dataset/davis_test.py
- `corrflow`:  zlai0/CorrFlow benchmark.py + models/colorizer.py
- `mast`:      zlai0/MAST benchmark.py + models/colorizer.py + models/deform_im2col_util.py

Each takes per-frame features `(T, D, h, w)` exactly as the model returns them (before any
normalisation: each rule applies its own) and the first frame's label channels `(K, h, w)` on
the feature grid, and returns the label maps of frames 1..T-1 on the grid, `(T-1, K, h, w)`,
plus the smallest margin of any discrete decision it took (top-k boundary gaps in logits,
argmax margins of hard feedback), so a test can check its data was tie-free. Separately,
`first_labels` (how the first mask reaches the grid) and `masks` (how grid labels become the
output id mask) where the reference has its own rule.

Plain dense torch in float64 on small inputs; nothing here imports densecorr.propagation.
`driver` is the one place that drives densecorr's propagation with given features.
"""
