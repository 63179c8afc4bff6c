"""The KD loss of the seed-001 lesson ("Knowledge distillation II: the KD loss"), as printed there."""
import torch.nn.functional as F


def kd_loss(student_logits, teacher_logits, labels, alpha=0.5, T=2.0):
    # term 1: hard-label cross-entropy (the SFT loss, prompt masked with -100)
    ce = F.cross_entropy(
        student_logits.view(-1, student_logits.size(-1)),
        labels.view(-1), ignore_index=-100)

    # term 2: KL to the temperature-softened teacher distribution
    s_log = F.log_softmax(student_logits / T, dim=-1)
    t_prob = F.softmax(teacher_logits / T, dim=-1)
    kl = F.kl_div(s_log, t_prob, reduction="batchmean") * (T * T)

    return alpha * ce + (1.0 - alpha) * kl
