"""Training-time data: the samples a run reads from Megatron indexed datasets (chunking and the data
layouts, the sample index and its cache, the MLM / CLM / MNTP objectives, packed micro-batches,
mixtures), the records beside each dataset, and the tokenizer those datasets were made with.
Offline preparation of the datasets is ettin_megatron.prep's."""
