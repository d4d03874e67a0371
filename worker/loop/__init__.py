"""The worker's Kafka loop as small steps, composed by `worker.consumer.StreamWorker`.

Each step does one job and is tested alone with fakes of confluent-kafka's clients:

- `intake`: a consumed `Message` -> `Inbound`, never raising (unreadable parts set `defect`);
- `run`: the handler in a bounded thread pool; an exception escaping it becomes a DLQ copy;
- `delivery`: produce a request's records, bounded retries, the dead-letter policy, fatal stop;
- `worker.offsets.OffsetCommitter`: every commit decision (the commit step);
- `backpressure`: pause and resume the assigned partitions;
- `rebalance`: assignment, revocation (waits only for revoked partitions' work) and loss;
- `progress`: the age of the oldest open request and the last moment work moved (liveness);
- `startup`: the topics the worker writes exist, and the dead-letter topic's size limit.

Everything that touches Kafka runs on the loop's thread; only the handler runs in the pool.
"""
