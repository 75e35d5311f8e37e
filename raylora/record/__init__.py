"""The study's data model: what a study knows about its trials, independent of who runs or records them.

states        the closed vocabularies: TrialState, JobState; an exception or an Optuna trial → a state
trials        StudyRecord and TrialRecord: summary.json, every trial's state, params, value and adapter
objectives    several objectives and constraints: the values told to Optuna, the Pareto front
comparison    a trial against the base model on the same eval records (gain, McNemar)
agreement     what early stopping cost and saved: step–final agreement, hours saved, could-have-won
"""
