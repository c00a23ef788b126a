"""fastrec.eval: vectorised ranking metrics (HR, NDCG, Recall, MRR) and AUC / UAUC in torch."""

from .metrics import Targets, auc, evaluate_topk, hit_rate, mrr, ndcg, recall, uauc
from .ranking import full_ranking, select_rows

__all__ = ["Targets", "auc", "evaluate_topk", "hit_rate", "mrr", "ndcg", "recall", "uauc"]
__all__ += ["full_ranking", "select_rows"]
