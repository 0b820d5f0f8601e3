"""Test-slide kit: synthetic slides from real tissue texture with planted artifacts and exact
ground truth (issue 3). `model` renders any region at any downsample, deterministically;
`writers` stream a model to every format the appliance reads."""
