"""Knowledge distillation: train a small student to predict what a teacher model predicts.

data.py (files -> token sequences), generate.py (teacher answers, sequence-level), targets.py (the teacher's
top-k + rest log-probs per position, from edgeai's own runtime), student.py (starting weights: `layers:N`
or a smaller model), torch_llama.py (the trainable model), loss.py (KL + cross-entropy), train.py (loop,
checkpoints, resume), export.py (HF folder -> edgeai converter), pipeline.py (`edgeai distill`).
Only torch_llama/loss/train need torch (`pip install edgeai[distill]`).
"""
