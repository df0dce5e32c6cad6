"""convattn.models"""
