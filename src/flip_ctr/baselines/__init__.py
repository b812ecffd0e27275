"""The PLM-based and hybrid baselines of the paper's Table II.

Each baseline is a stage (``conf/stage/<name>.yaml``) whose ``builder`` lives here, selected with
the ``baseline`` config group (``conf/baseline/<name>.yaml``)::

    flip-ctr train baseline=ctr_bert data=ml100k seed=1
    flip-ctr train -m baseline=ctr_bert,ptab,p5,ctrl,plm_only seed=1,2,3 data=ml100k

Every baseline evaluates through :class:`flip_ctr.stages.ctr.CTRStage` (exact AUC/Logloss over
the full test set, ``metrics.json`` + ``predictions.parquet``), so ``flip-ctr report`` tables them
next to FLIP and the ID models. The report's model label is the stage ``name``.

- :mod:`.ctr_bert` — CTR-BERT: user-field text and item-field text through two separate PLM
  towers, combined into one click logit (the schema's ``Field.side`` splits the fields).
- :mod:`.ptab` — PTab: token-level MLM on the dataset's text, then classification finetuning
  (one builder runs both phases).
- :mod:`.p5` — P5 (single task, CTR): T5 text-to-text with the target words "yes"/"no" and
  several prompt templates; ``P(click) = softmax(logit_yes, logit_no)[yes]`` at the first
  decoder step.
- :mod:`.ctrl` — CTRL: instance-level contrastive alignment (InfoNCE, :class:`ICLHead`) of the
  ID model and the PLM, then the ID model alone is finetuned and served (no PLM in the served
  artifact).
- PLM-only classifier from plain pretrained weights: the ``finetune_plm`` stage with
  ``pretrained_dir: null`` (``conf/baseline/plm_only.yaml``), no code here.
"""

BASELINES = ("ctr_bert", "ptab", "p5", "ctrl", "plm_only")
