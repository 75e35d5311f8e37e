"""What a study leaves behind: its storage, its MLflow records, its report, and the promoted model.

storage        the study folder: local/NFS, or an s3:// / gs:// URI with a local mirror
tracker        MLflow, written by the driver alone, through an outbox that survives outages
tags           the MLflow tag names raylora writes and searches by
secrets        credentials kept out of printed URIs and MLflow
report         leaderboard, scope comparison, importances
promote        the best trial's adapter → a registered pyfunc model under an alias
serving        that pyfunc model (base + adapter, greedy generation)
"""
