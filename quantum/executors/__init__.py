"""Executors: who evaluates a variational circuit (see base.Executor)."""
