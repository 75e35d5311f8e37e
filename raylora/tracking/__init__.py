"""What a study leaves behind: its storage, its MLflow records, its report, and the promoted model.
Never imports :mod:`raylora.study` (the driver uses tracking, not the other way round).

    storage         the study folder: local/NFS, or an s3:// / gs:// URI with a local mirror
    tracker         a study's MLflow runs, written by the driver through an outbox that survives outages
    store           which MLflow store a study records to, created under a lock, reached or refused
    tags            the MLflow tag names raylora writes and searches by
    report          the report folder: leaderboards, scope comparison, importances
    html_report     report/index.html: the study on one self-contained page
    figures         the report's figures kept between writes, drawn again only when their inputs change
    verdict         the sentences at the top of index.html
    promote         the best trial's adapter → a registered pyfunc model under an alias
    serving         that pyfunc model (base + adapter, greedy generation)
    serving_model   the file MLflow loads that model from (a model from code)
"""
