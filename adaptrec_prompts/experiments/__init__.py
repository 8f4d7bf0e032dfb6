"""The paper's experiment drivers: `adaptrec experiment` and the README's main job (`adaptrec pipeline`)."""
