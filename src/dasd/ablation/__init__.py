"""The ablation harness: the steps of a row, what a row's folder keeps as evidence, the report's inputs,
numbers, paired contrasts, power and outputs, and the world analysis. ``dasd.recipes.ablation`` and
``dasd.recipes.report`` run it from the config."""
