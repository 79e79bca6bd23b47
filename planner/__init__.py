"""clusterplan planner: cost model, search and plans. Pure Python; never imports torch."""
