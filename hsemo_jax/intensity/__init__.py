"""Video-level emotion intensity regression (ABAW-5 ERI on Hume-Reaction, ABAW-6/8 EMI on
Hume-Vidmimic2), HSEmotion's method (spec seed_extras §1).

    labels.py     label CSV reader (train_split.csv / valid_split.csv), target sets, submission writer
    frames.py     per-frame features of face-crop folders (saved features or extracted with a model)
    stats.py      per-video [mean ‖ std ‖ min ‖ max] of every n-th frame: one jitted vmapped pass
    regressor.py  Pearson losses, metric, training and save / load of the linear / MLP sigmoid
                  regressors (the modules: `hsemo_jax.models.heads`)
    runs.py       a run from label files and frame sources (train_run), its submission (predict_run);
                  the command line is `hsemo_jax/commands/intensity.py`
"""
