"""`python -m bench`: every performance figure against its target, each measured side by side in one run.

Every timing is a ratio of two steps run in alternation in the same process, on the same inputs
and the same thread count, so the machine's load moves both. A ratio is reported as the median
over `n` alternations with its interquartile spread.

    timing     alternating timer and the `Ratio` it returns
    report     a `Figure` (value, spread, n, target) and the printed table
    steps      one training step of each kind on a backbone: dense, top-k mask, coefficients
    topk       (a) top-k masked step vs dense step: MLP 784-1024-1024-10, conv net, GEM ResNet-18
    mixture    (b) ImpressLearn coefficient step vs dense step, m = 8, 32, 128
    storage    (c) bits per stored mask weight; memory growth over 1,000 coefficient tasks
    data       (d) device-resident batching vs a DataLoader over the same tensors
    inference  task-identity inference cost vs stored tasks (its own entry: `python -m bench.inference`)
"""
