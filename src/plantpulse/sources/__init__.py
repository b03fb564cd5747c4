"""External HTTP sources: endpoints PlantPulse polls for readings (historians, PLC gateways,
vendor clouds that only answer requests)."""
