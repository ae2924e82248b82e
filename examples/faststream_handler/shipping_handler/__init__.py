"""A shipping-quote service written with FastStream, run as a Soma handler."""
