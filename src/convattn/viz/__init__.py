"""convattn.viz"""
