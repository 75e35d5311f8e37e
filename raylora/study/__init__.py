"""The study driver: Ray start-up, Tune with the Optuna searcher and ASHA, and the trial pool whose
long-lived Ray Train worker groups train the trials. The top layer: it may use every other package.

    driver            run(spec): the whole study, start to report
    cluster           ray.init: attach, or start a local Ray
    signals           SIGTERM stops a study as Ctrl-C does (exit 143)
    reaper            the processes a killed driver started end with it
    placement         what the cluster's nodes hold: trials at once, trial-driver resources
    lock              one driver per study (a lease in the study folder)
    specfile          spec.json and the check --resume makes
    optuna_searcher   Optuna's journal and sampler; the searcher that asks and tells it (trial states)
    warm              enqueued configurations and earlier studies as prior
    repair            a study's state mended after a crash (torn journal, unreadable summary)
    trainable         the Tune trainable each trial runs (hands the trial to the pool)
    pool              the pool actor: queue, runner threads, their Ray Train trainers
    torch_backend     the runners' PyTorch backend: torch imported on the workers alone
    pool_worker       the loop each Ray Train worker runs, and its Session
    watchdog          when a trial's workers last reported; a silent trial's workers are restarted
    checkpoints       adapter checkpoints under <study>/runs/<slot>/
    manifest          a checkpoint's files, sizes and sha256, checked before it is trusted; fsync
    baseline          the base model scored once on the eval set; trials compared with it
    listener          the searcher's trial events, passed on to the pool, the progress lines and MLflow
    progress          the lines a user sees during a study
    refresh           ``raylora report``: a study's report rebuilt from its folder
    status            ``raylora status``: where a study stands, read from its folder without Ray
    stopping          the Tune scheduler a spec asks for (ASHA, Pareto-rank ASHA), grace auto
    bounded_asha      ASHA whose stops must pass the could-still-win bound (scheduler.bound)
"""
