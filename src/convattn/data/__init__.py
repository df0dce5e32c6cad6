"""convattn.data"""
