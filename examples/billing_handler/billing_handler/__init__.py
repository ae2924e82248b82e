"""An invoicing service, written as a Soma service author writes one: outside Soma's tree."""
