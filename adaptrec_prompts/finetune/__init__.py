"""Fine-tuning: SFT rows rendered by the programs, the TRL trainer and losses, and the SFT experiment."""
