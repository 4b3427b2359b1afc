"""zfeed data server: loader workers, Caffe transforms, batches over ZeroMQ PUSH."""
