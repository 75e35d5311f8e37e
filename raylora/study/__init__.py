"""The study driver: Ray start-up, Tune with the Optuna searcher and ASHA, the study record, and the trial
pool whose long-lived Ray Train worker groups train the trials.

    driver            run(spec): the whole study, start to report
    cluster           ray.init: attach, or start a local Ray
    placement         what the cluster's nodes hold: trials at once, trial-driver resources
    optuna_searcher   Optuna's journal and sampler; the searcher that asks and tells it (trial states)
    record            summary.json: every trial's state, params, value and adapter
    states            the vocabularies: TrialState, JobState; exception → state
    trainable         the Tune trainable each trial runs (hands the trial to the pool)
    pool              the pool actor: queue, runner threads, their TorchTrainers
    pool_worker       the loop each Ray Train worker runs, and its Session
    checkpoints       adapter checkpoints under <study>/runs/<slot>/
    progress          the lines a user sees during a study
    stopping          the Tune scheduler a spec asks for (ASHA, Pareto-rank ASHA), grace auto, rung agreement
"""
