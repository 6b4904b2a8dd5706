"""From a report's text and place to a routing decision: place finding, screening, the policy, the hand-off."""
